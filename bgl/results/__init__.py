"""bgl.results"""
