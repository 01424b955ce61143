"""bgl.data"""
