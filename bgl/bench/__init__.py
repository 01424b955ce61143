"""bgl.bench"""
